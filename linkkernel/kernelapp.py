"""The kernel application: ipykernel's IPKernelApp launching LinkKernel."""

from ipykernel.kernelapp import IPKernelApp


def launch() -> None:
    """Start the Link Python kernel from the command line (`python -m linkkernel -f FILE`)."""
    from linkkernel.kernel import LinkKernel

    IPKernelApp.launch_instance(kernel_class=LinkKernel)
