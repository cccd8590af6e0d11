"""The compressor service (FastAPI, port 8081): adapter uploads, compression jobs, publishing to the bucket.

Not built yet: it lands with the compressor-service issue, as a thin layer over :mod:`soppu`.
"""
