"""A process that looks like a HotSpot JVM to tokentap's discovery and never
answers an attach: it maps a file named libjvm.so (executable), catches
SIGQUIT, listens on /tmp/.java_pid<pid> with a backlog of 0 and fills that
queue itself, so a blocking connect to it never returns. Prints "ready",
then waits for its stdin to close. Args: the libjvm.so file to map."""
import mmap
import os
import signal
import socket
import sys

lib = open(sys.argv[1], "rb")
mapped = mmap.mmap(lib.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_EXEC)
signal.signal(signal.SIGQUIT, lambda *_: None)
path = "/tmp/.java_pid%d" % os.getpid()
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(0)
held = []
while True:
    c = socket.socket(socket.AF_UNIX)
    c.setblocking(False)
    try:
        c.connect(path)
    except BlockingIOError:
        break
    held.append(c)
print("ready", flush=True)
sys.stdin.read()
os.unlink(path)
