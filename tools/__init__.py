"""The music toolkit: extract, parse-check, repair, convert, evaluate and render ABC tunes."""
