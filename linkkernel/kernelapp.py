"""The kernel application: ipykernel's IPKernelApp launching LinkKernel."""

from ipykernel.kernelapp import IPKernelApp


def launch() -> None:
    """Start the Link Python kernel from the command line (`python -m linkkernel -f FILE`)."""
    from linkkernel.cow import allow_many_maps
    from linkkernel.kernel import LinkKernel

    allow_many_maps()
    IPKernelApp.launch_instance(kernel_class=LinkKernel)
