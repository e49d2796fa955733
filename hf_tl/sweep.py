"""`python -m hf_tl.sweep`: the same as `hf-tl sweep`, kept for the commands people already have."""

from hf_tl.cli.sweep import main

if __name__ == "__main__":
    main()
