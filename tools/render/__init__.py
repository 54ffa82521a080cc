"""What people hear and see: audio, the score (made safe to show), the piano roll, overlays.

May import `tools.abc`, the shared tools modules and the settings.
"""
