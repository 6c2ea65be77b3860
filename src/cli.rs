//! The command line: clap definitions and dispatch of each command.
