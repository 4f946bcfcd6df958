"""hubbub's WebSocket layer: RFC 6455 spoken by hubbub itself, under uvicorn, without ASGI.

It owns everything between the socket and a `Session`: the upgrade (`handshake`: the request
uvicorn hands over, its checks and the answers; `admission`: the origin and token policy and the
node's room for one more), the framing (`frames`), permessage-deflate (`deflate`, RFC 7692) and
the connection itself (`connection`: the asyncio protocol and its states). `frames`, `deflate`
and `handshake` are pure (import-linter holds them to the pure core); `connection` and `admission`
talk to the node. docs/websocket.md says what the layer accepts and how it answers.
"""
