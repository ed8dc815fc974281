"""`python -m opcircuits …` (and `accelerate launch -m opcircuits …`) runs the CLI."""

from opcircuits.cli import main

if __name__ == "__main__":
    main()
