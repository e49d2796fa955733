"""`python -m hf_tl.train` and `accelerate launch -m hf_tl.train`: the run, in this process (`hf-tl train`
starts Accelerate's launcher itself when asked or configured)."""

from hf_tl.cli.train import run_here as main

if __name__ == "__main__":
    main()
