"""`python -m hf_tl.eval`: the same as `hf-tl eval`, kept for the commands people already have."""

from hf_tl.cli.eval import main

if __name__ == "__main__":
    main()
