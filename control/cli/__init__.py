"""`flotilla`: the operator's and producers' command-line tool."""
