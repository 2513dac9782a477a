/*
 * cmd_bake.c: placeholder until the command is implemented (replaced by its implementation).
 */
#include "cli/cli.h"

const char cmd_bake_help[] = "usage: mood bake (not implemented yet)\n";

int cmd_bake(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "mood: error: 'bake' is not implemented yet\n");
    return 2;
}

