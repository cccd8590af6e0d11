"""The wire protocol SOPPU's services speak: LoRAX's and OpenAI's response shapes (pydantic models, no web
framework), shared by the engine that produces them and the gateway that relays them; and the request-body
guard every service puts at its edge (:mod:`soppu.protocol.request_body`, plain ASGI)."""
