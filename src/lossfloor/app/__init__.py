"""The `lossfloor` command: option types and checks, one module per command, model sources and the cli."""
