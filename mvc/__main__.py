"""`python -m mvc`: the CLI, for environments where the `mvc` script is not on PATH."""

from mvc.cli.main import main

if __name__ == "__main__":
    main()
