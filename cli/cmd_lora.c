/*
 * cmd_lora.c: placeholder until the command is implemented (replaced by its implementation).
 */
#include "cli/cli.h"

const char cmd_lora_merge_help[] = "usage: mood lora merge (not implemented yet)\n";

int cmd_lora_merge(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "mood: error: 'lora merge' is not implemented yet\n");
    return 2;
}

const char cmd_lora_resize_help[] = "usage: mood lora resize (not implemented yet)\n";

int cmd_lora_resize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "mood: error: 'lora resize' is not implemented yet\n");
    return 2;
}

const char cmd_lora_extract_help[] = "usage: mood lora extract (not implemented yet)\n";

int cmd_lora_extract(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "mood: error: 'lora extract' is not implemented yet\n");
    return 2;
}

