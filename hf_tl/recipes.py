"""`python -m hf_tl.recipes`: the same as `hf-tl recipes`, kept for the commands people already have."""

from hf_tl.cli.recipes import main

if __name__ == "__main__":
    main()
