from tests.kernel.stack import local_stack

__all__ = ["local_stack"]
