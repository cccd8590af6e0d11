"""The web pieces every SOPPU service shares and the core may not hold (it imports no web framework): the
Server-Sent Events response (:mod:`soppu_web.sse`), serving an app from command-line flags
(:mod:`soppu_web.serve`), LoRAX's error answers (:mod:`soppu_web.lorax_errors`) and the tests' and local stack's S3
server (:mod:`soppu_web.s3_server`, moto). Depends on FastAPI, Starlette and uvicorn; never on a service."""
