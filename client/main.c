/* apr: the command-line tool. Dispatches to one subcommand. */
#include <stdio.h>
#include <string.h>

#include "client/client.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"inspect", apr_cmd_inspect, "print a GGUF file's metadata and tensor table"},
    {"tokenize", apr_cmd_tokenize, "print the token ids of a text as JSON"},
    {"eval", apr_cmd_eval, "run a model in-process, greedy, with top-5 logits per position"},
    {"mkmodel", apr_cmd_mkmodel, "write a synthetic Qwen2.5 model (real shapes, Q4_K_M mix)"},
    {"generate", apr_cmd_generate, "stream a completion of a prompt from apr-coord"},
    {"chat", apr_cmd_chat, "chat with the model behind apr-coord, one line per message"},
    {"status", apr_cmd_status, "show apr-coord's model, queue and workers; exit 0 if one is ready"},
    {"bench", apr_cmd_bench, "time sequential requests: decode and prefill tok/s, TTFT, CV, bars"},
    {"load", apr_cmd_load, "load apr-coord from many sockets; --verify output, --chaos kill workers"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: apr COMMAND [ARGS]   (apr COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "apr: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
