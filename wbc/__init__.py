"""The WBC microscopy library, by concept (see README "Architecture"). Importing it has no side
effects: environment defaults, resolvers and config registration happen in `wbc.cli.prepare()`."""
