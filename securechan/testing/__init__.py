"""Tools for attacking securechan on purpose: a scriptable malicious relay.

Used by the adversarial test suite (``tests/adversary``) and by
``securechan demo``, which shows the mediator's attacks being caught. Nothing
here is used by the client or the relay themselves.
"""

__all__: list[str] = []
