"""`python -m detcompress`, as torchrun runs it: `torchrun --nproc_per_node N -m detcompress
compress ... --launcher pytorch`."""

from detcompress.cli import main

if __name__ == "__main__":
    main()
