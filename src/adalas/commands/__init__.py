"""One module per `adalas` subcommand: each has `build_parser()` and `main(argv) -> int`."""
