"""`python -m hf_tl.push`: the same as `hf-tl push`, kept for the commands people already have."""

from hf_tl.cli.push import main

if __name__ == "__main__":
    main()
