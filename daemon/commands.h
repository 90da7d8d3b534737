/*
 * commands.h - the subcommands of the swarmd binary. Each takes the arguments after its name
 * (argv[0] is the subcommand) and returns a process exit code: 0 success, 1 failure (after
 * printing what went wrong and what to do), 2 bad usage.
 */
#ifndef SW_DAEMON_COMMANDS_H
#define SW_DAEMON_COMMANDS_H

#include <stdint.h>

int sw_cmd_eval(int argc, char **argv);
int sw_cmd_generate(int argc, char **argv);
int sw_cmd_chat(int argc, char **argv);
int sw_cmd_inspect(int argc, char **argv);
int sw_cmd_quantize(int argc, char **argv);
int sw_cmd_tokenize(int argc, char **argv);
int sw_cmd_id(int argc, char **argv);
int sw_cmd_swarm_key(int argc, char **argv);
int sw_cmd_dht(int argc, char **argv);
int sw_cmd_serve(int argc, char **argv);
int sw_cmd_status(int argc, char **argv);

/* Shared by main.c and the commands: options every subcommand accepts. */
typedef struct {
    int threads;          /* 0 = one per CPU */
    const char *backend;  /* "cpu" or "reference" */
    const char *identity; /* --identity FILE, NULL: the default under the user's state directory */
    const char *swarm_key; /* --swarm-key FILE, NULL: none (a public swarm) */
} sw_global_opts_t;

extern sw_global_opts_t sw_global_opts;

/* Parses comma-separated token ids ("1,2,3") for option opt into a new array (*out, caller frees
 * with sw_free) of *n ids; SW_EUSAGE with a detail on bad input. */
int sw_cli_parse_ids(const char *opt, const char *s, int32_t **out, int *n);

#endif
