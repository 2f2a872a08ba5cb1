"""The client API of the reference documentation, unchanged::

    from rexec.client_api import remote_func

    remote_func().set_remote_addr("broker.example.org")
    remote_func().set_remote_port("5559")
    remote_func().set_exec_token(token)
    remote_func().set_api_url("http://deploy.example.org/rexec/spawn")
    remote_func().set_environment("input_requirements.txt", token)

    @remote_func
    def my_fn(): ...

Every setter is optional: what is not set comes from the connection profile written by
``rexec up`` or from the ``REXEC_*`` environment variables.
"""

from rexec.client.remote import remote_func

__all__ = ["remote_func"]
