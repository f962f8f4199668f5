"""HTTP/2 for the test LLM server (llm_server.py): one connection's frames
read with the `h2` library, each request served by the server's ordinary
HTTP/1.1 handler in its own thread, its output re-framed as HEADERS and DATA."""
import ssl
import threading


class H2Writer:
    """The handler's HTTP/1.1 output, re-framed as HTTP/2 HEADERS and DATA on one stream."""

    def __init__(self, conn, stream_id, burst=0):
        self.conn, self.stream_id = conn, stream_id
        # burst N: DATA payloads held and sent at the end in one write, in
        # frames of at most N bytes, so one TLS record carries many small
        # frames (a client that fell behind a fine-grained stream).
        self.burst, self.held = burst, []
        self.buf = b""
        self.head_done = False
        self.chunked = False

    def flush(self):
        pass

    def write(self, b):
        self.buf += bytes(b)
        if not self.head_done:
            if b"\r\n\r\n" not in self.buf:
                return len(b)
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = [(":status", lines[0].split()[1])]
            for line in lines[1:]:
                k, v = line.split(":", 1)
                k = k.strip().lower()
                if k == "transfer-encoding":
                    self.chunked = True
                elif k not in ("connection", "keep-alive"):
                    headers.append((k, v.strip()))
            self.conn.send(lambda c: c.send_headers(self.stream_id, headers))
            self.head_done = True
        while self.buf:
            if not self.chunked:
                data, self.buf = self.buf, b""
            else:
                if b"\r\n" not in self.buf:
                    break
                size, rest = self.buf.split(b"\r\n", 1)
                n = int(size, 16)
                if len(rest) < n + 2:
                    break
                data, self.buf = rest[:n], rest[n + 2:]
            if data and self.burst:
                self.held.append(data)
            elif data:
                self.conn.send_data(self.stream_id, data)
        return len(b)


class H2Conn:
    """One HTTP/2 connection: frames read here, each request served by the
    ordinary handler in its own thread (many concurrent streams)."""

    def __init__(self, sock, server, conn_local):
        import h2.config
        import h2.connection
        self.sock, self.server = sock, server
        # The server's thread-local naming the connection a request came on.
        self.conn_local = conn_local
        self.lock = threading.Lock()
        # Signalled when the peer opens a flow-control window (or goes).
        self.window_open = threading.Condition(self.lock)
        self.closed = False
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams = {}

    def send_data(self, stream_id, data):
        """DATA frames no larger than the peer allows, within its flow-control
        windows: waits for its WINDOW_UPDATEs (a download larger than 64 KiB)."""
        while data:
            with self.lock:
                n = min(self._wait_room(stream_id, 1), len(data))
                self.conn.send_data(stream_id, data[:n])
                out = self.conn.data_to_send()
                if out:
                    self.sock.sendall(out)
            data = data[n:]

    def send_burst(self, stream_id, pieces, size):
        """DATA frames of at most `size` bytes of `pieces`, and the stream's
        end, in one write. Should the windows be short (downloads beside
        it), it waits for the peer's WINDOW_UPDATEs, and what was framed
        until then leaves first."""
        frames = [p[i:i + size] for p in pieces for i in range(0, len(p), size)]
        with self.lock:
            for piece in frames:
                self._wait_room(stream_id, len(piece))
                self.conn.send_data(stream_id, piece)
            self.conn.end_stream(stream_id)
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)

    def _wait_room(self, stream_id, n):
        """With the lock held: wait until the peer's windows and frame size
        let a DATA frame of `n` bytes out on the stream, sending what was
        framed so far first (the peer opens its windows as it reads). Returns
        the room there is."""
        while True:
            room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if room >= n:
                return room
            if self.closed:
                raise OSError("HTTP/2 connection closed")
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)
            self.window_open.wait(timeout=5)

    def send(self, fn):
        # One writer at a time: OpenSSL rejects interleaved partial writes.
        with self.lock:
            fn(self.conn)
            data = self.conn.data_to_send()
            if data:
                self.sock.sendall(data)

    def run(self):
        import h2.events
        self.send(lambda c: c.initiate_connection())
        while True:
            try:
                data = self.sock.recv(65536)
            except (OSError, ssl.SSLError):
                self.close()
                return
            if not data:
                self.close()
                return
            with self.lock:
                events = self.conn.receive_data(data)
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    self.streams[ev.stream_id] = (dict(ev.headers), bytearray())
                elif isinstance(ev, h2.events.DataReceived):
                    self.streams[ev.stream_id][1].extend(ev.data)
                    self.send(lambda c, e=ev: c.acknowledge_received_data(e.flow_controlled_length, e.stream_id))
                elif isinstance(ev, h2.events.StreamEnded):
                    threading.Thread(target=self.serve, args=(ev.stream_id,), daemon=True).start()
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.close()
                    return
                elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                    with self.lock:
                        self.window_open.notify_all()
            self.send(lambda c: None)

    def close(self):
        with self.lock:
            self.closed = True
            self.window_open.notify_all()

    def serve(self, stream_id):
        headers, body = self.streams.pop(stream_id)
        self.conn_local.id = id(self)
        raw = "{} {} HTTP/1.1\r\nHost: {}\r\n".format(headers[":method"], headers[":path"], headers.get(":authority", ""))
        for k, v in headers.items():
            if not k.startswith(":") and k not in ("content-length", "host"):
                raw += f"{k}: {v}\r\n"
        raw = raw.encode("latin-1") + b"Content-Length: %d\r\n\r\n" % len(body) + bytes(body)
        handler = self.server.RequestHandlerClass
        h = handler.__new__(handler)
        h.server, h.client_address, h.request = self.server, ("h2", 0), None
        h.rfile = __import__("io").BytesIO(raw)
        h.wfile = H2Writer(self, stream_id, burst=int(headers.get("x-test-burst") or 0))
        h.close_connection = True
        try:
            h.handle_one_request()
        finally:
            if h.wfile.held:
                self.send_burst(stream_id, h.wfile.held, h.wfile.burst)
            else:
                self.send(lambda c: c.end_stream(stream_id))
