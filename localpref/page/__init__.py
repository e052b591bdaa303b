"""``localpref steer serve``: a local web page to make steers by hand.

A person writes a prompt, the model writes its answer token by token, the person stops it,
clicks where it goes wrong, types the correction and lets it resume; Accept appends the whole
trajectory (one step per correction) to the output file, in the form ``load_steers`` reads and
``localpref train data=jsonl data.path=...`` trains on.

    session.py   one trajectory being steered (a ``TurnWriter`` and its steps); no HTTP
    review.py    the output file: preparing it, the review view (spans as ``data inspect``), deleting
    app.py       the FastAPI app: routes, limits, same-origin checks, streaming
    listen.py    the listening socket (rebinds at once after a kill), loopback and Host checks
    static/      the page: plain HTML, CSS and JavaScript (no build step); it renders every text
                 a model or a person wrote as text (``textContent``), never as HTML
"""
