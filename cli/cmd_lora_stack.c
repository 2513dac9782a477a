/*
 * cmd_lora_stack.c: placeholder until the command is implemented (replaced by its implementation).
 */
#include "cli/cli.h"

const char cmd_lora_stack_help[] = "usage: mood lora stack (not implemented yet)\n";

int cmd_lora_stack(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "mood: error: 'lora stack' is not implemented yet\n");
    return 2;
}

