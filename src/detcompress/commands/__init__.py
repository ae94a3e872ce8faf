"""One thin module per subcommand: options in, one library call, result out."""
