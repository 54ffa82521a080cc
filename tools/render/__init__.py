"""What people hear, see and edit: audio, the score (made safe to show), the piano roll, overlays,
the MIDI with a track per voice, MusicXML.

May import `tools.abc`, the shared tools modules and the settings.
"""
