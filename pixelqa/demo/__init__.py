"""The web demo: `python -m pixelqa.demo --model DIR_OR_CKPT` serves a page on 127.0.0.1 to prompt and chat.

models.py     `--model tiny` (random tiny UniPixel on CPU) or a folder / checkpoint through pixelqa.predict
sessions.py   one browser session: its temporary folder, media, conversation and progress; idle ones removed
media.py      uploads (size / length caps, decoding through pixelqa.predict.media) and the built-in samples
turns.py      page prompts -> pixelqa.predict prompts, one turn on the Predictor, outputs, thumbnails, zip
messages.py   user-facing messages: server paths and exception details never reach the page
app.py        the HTTP routes (Starlette) and the static page in static/
__main__.py   the command line
"""
