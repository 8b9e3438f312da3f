"""The java kernel: `kernel.py` (ipykernel) in front of JShell in a JVM (`Repl.java`)."""
