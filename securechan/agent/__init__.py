"""``securechan agent``: one process per home that keeps the key unlocked for
a while, owns the relay connections and answers JSON-RPC 2.0 on a Unix
socket only its owner can use (docs/AGENT.md).

Modules: ``rpc`` (frames, sans-I/O), ``homelock`` (one writer per home), ``peercred`` (who is on the
other end), ``keycache`` (the unlocked key and its TTLs), ``methods`` (the
method table over :class:`~securechan.client.channel.Channel`), ``server``
(the socket), ``receiver`` (background receiving). Clients:
:mod:`securechan.client.agent_client`; where the socket lives:
:mod:`securechan.client.agent_paths`.
"""
