/* client/ — the apr command-line tool. Each subcommand is one function taking
 * its own argv (argv[0] is the subcommand name) and returning the exit status. */
#ifndef APR_CLIENT_H
#define APR_CLIENT_H

int apr_cmd_inspect(int argc, char **argv);
int apr_cmd_tokenize(int argc, char **argv);
int apr_cmd_eval(int argc, char **argv);
int apr_cmd_mkmodel(int argc, char **argv);

#endif
