"""The baseline of bench/hot_path.py: Flask itself, one hello-world endpoint."""

from flask import Flask

app = Flask(__name__)


@app.get("/hello")
def hello() -> str:
    return "Hello, World!"
