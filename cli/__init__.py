"""The `credits` command-line tool."""
