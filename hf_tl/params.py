"""`python -m hf_tl.params`: the same as `hf-tl params`, kept for the commands people already have."""

from hf_tl.cli.params import main

if __name__ == "__main__":
    main()
