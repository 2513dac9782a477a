/*
 * cmd_hash.c: placeholder until the command is implemented (replaced by its implementation).
 */
#include "cli/cli.h"

const char cmd_hash_help[] = "usage: mood hash (not implemented yet)\n";

int cmd_hash(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "mood: error: 'hash' is not implemented yet\n");
    return 2;
}

