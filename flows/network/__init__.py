"""Where connections made on an agent's behalf may go.

`guard` holds every address rule: which endpoints are Ariel's control plane,
which addresses are cloud metadata, how an IPv6 spelling of an IPv4 address is
read. Each outbound path of a run asks it: `http_request` and the model's base
URL by name before the call, and `egress`, an audit hook, at every
`socket.connect` during an LLM or tool call. The control plane computes the
set it protects with it too.
"""
