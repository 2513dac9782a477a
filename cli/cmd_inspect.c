/*
 * cmd_inspect.c: placeholder until the command is implemented (replaced by its implementation).
 */
#include "cli/cli.h"

const char cmd_inspect_help[] = "usage: mood inspect (not implemented yet)\n";

int cmd_inspect(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "mood: error: 'inspect' is not implemented yet\n");
    return 2;
}

