"""The ``oblivio`` command line: one module per subcommand group, ``main`` parses and dispatches."""
