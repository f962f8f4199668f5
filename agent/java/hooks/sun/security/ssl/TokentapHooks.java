package sun.security.ssl;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.ref.ReferenceQueue;
import java.lang.ref.WeakReference;
import java.nio.ByteBuffer;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLSocket;

/**
 * What the patched JSSE methods call (see tokentap.agent.ClassPatch): the
 * plaintext boundary of every JSSE connection.
 * - {@code SSLSocketImpl$AppOutputStream.write(byte[],int,int)} and
 *   {@code $AppInputStream.read(byte[],int,int)}: SSLSocket users
 *   (HttpsURLConnection, OkHttp, Apache HttpClient);
 * - {@code SSLEngineImpl.wrap/unwrap} (the four-argument forms every public
 *   overload calls): SSLEngine users (java.net.http.HttpClient, Netty's JDK
 *   provider, Jetty);
 * - {@code SSLSocketImpl.close()} and {@code SSLEngineImpl.closeOutbound()}:
 *   a connection's end.
 *
 * Defined by the tokentap agent into java.base's own package (through a
 * private lookup), so JSSE reaches it with no module edge and no bootstrap
 * class path entry (which would print a CDS warning on the application's
 * stderr and turn class sharing off for classes loaded later).
 *
 * A wrapping hook runs the original method once (through the one-shot pass
 * flag its prefix consumes) and reports the bytes that really moved: what a
 * read returned, what wrap consumed and unwrap produced, buffer by buffer.
 * The application's exceptions pass through unchanged; tokentap's own code is
 * guarded, so that a failure in it costs the report, never the call.
 *
 * Only client-side connections are reported: a server-mode socket or engine
 * (an HTTPS server, a TLS listener of the application's own) never carries a
 * call to an LLM API, so it gets no id, no native call, and takes no slot of
 * the id table (decided once per object, see {@link TokentapConns}). Neither
 * does an engine after its closeOutbound (its close_notify wrap, a late
 * unwrap).
 *
 * The bytes go to native functions (libtokentap_java.so) that do nothing but
 * return: tokentap's eBPF uprobes on them copy the bytes in the kernel, as at
 * OpenSSL's SSL_write. Synchronous on purpose: the call returns at once, so
 * there is no queue to bound, no thread to start, nothing that can block.
 */
public final class TokentapHooks {
    static final int EGRESS = 0;
    static final int INGRESS = 1;

    private static final ThreadLocal<boolean[]> PASS = new ThreadLocal<boolean[]>() {
        @Override
        protected boolean[] initialValue() {
            return new boolean[1];
        }
    };

    /** Per-thread scratch for buffer positions (engine calls). */
    private static final ThreadLocal<int[]> POSITIONS = new ThreadLocal<int[]>() {
        @Override
        protected int[] initialValue() {
            return new int[16];
        }
    };

    /** Per-thread copy buffer, only for threads that meet read-only buffers. */
    private static final ThreadLocal<byte[]> COPY = new ThreadLocal<byte[]>() {
        @Override
        protected byte[] initialValue() {
            return new byte[16 * 1024];
        }
    };

    private static volatile boolean loaded;
    /** Failures of tokentap's own code (never the application's). */
    static volatile long errors;
    /** The native library loaded, once it is. */
    private static volatile String library;
    /** Set only once the whole install succeeded (see {@link #state()}). */
    private static volatile boolean installed;
    /** Why the install stopped short, if it did. */
    private static volatile String failure;

    private TokentapHooks() {}

    /** Load the native library from where the tokentap agent placed it. */
    public static void load(String path) {
        System.load(path);
        library = path;
    }

    /** The install's outcome: complete, or not and why. */
    public static void installed(boolean complete, String why) {
        installed = complete;
        failure = why;
    }

    /**
     * What an earlier install came to, for the next tokentap agent (these
     * classes stay defined for the JVM's life, whatever happened):
     * "installed library=PATH" or "incomplete library=PATH|none: why".
     */
    public static String state() {
        String lib = "library=" + (library == null ? "none" : library);
        if (installed) {
            return "installed " + lib;
        }
        return "incomplete " + lib + ": " + (failure == null ? "stopped before it finished" : failure);
    }

    /** Start reporting (once tokentap probes the library, see {@link #probed()}). */
    public static void enable() {
        loaded = true;
    }

    /** Whether tokentap's uprobe sits on the native data function. */
    public static native boolean probed();

    static native void data(long conn, int direction, byte[] buf, int off, int len);

    static native void dataDirect(long conn, int direction, ByteBuffer buf, int off, int len);

    static native void close(long conn);

    /** Called by every wrapping prefix: true once after {@link #arm()}. */
    public static boolean pass() {
        boolean[] p = PASS.get();
        if (p[0]) {
            p[0] = false;
            return true;
        }
        return false;
    }

    private static void arm() {
        PASS.get()[0] = true;
    }

    private static void disarm() {
        PASS.get()[0] = false;
    }

    static long conn(Object o) {
        if (!loaded) {
            return 0;
        }
        try {
            return TokentapConns.id(o);
        } catch (Throwable t) {
            errors++;
            return 0;
        }
    }

    public static int sockRead(Object sock, InputStream in, byte[] b, int off, int len) throws IOException {
        long id = conn(sock);
        int n;
        arm();
        try {
            n = in.read(b, off, len);
        } finally {
            disarm();
        }
        if (id != 0 && n > 0) {
            report(id, INGRESS, b, off, n);
        }
        return n;
    }

    public static void sockWrite(Object sock, OutputStream out, byte[] b, int off, int len) throws IOException {
        long id = conn(sock);
        arm();
        try {
            out.write(b, off, len);
        } finally {
            disarm();
        }
        if (id != 0 && len > 0) {
            report(id, EGRESS, b, off, len);
        }
    }

    public static SSLEngineResult engineWrap(SSLEngine e, ByteBuffer[] srcs, int off, int len, ByteBuffer dst)
            throws SSLException {
        long id = conn(e);
        int[] before = id == 0 ? null : positions(srcs, off, len);
        SSLEngineResult r;
        arm();
        try {
            r = e.wrap(srcs, off, len, dst);
        } finally {
            disarm();
        }
        if (before != null && r.bytesConsumed() > 0) {
            moved(id, EGRESS, srcs, off, len, before);
        }
        return r;
    }

    public static SSLEngineResult engineUnwrap(SSLEngine e, ByteBuffer src, ByteBuffer[] dsts, int off, int len)
            throws SSLException {
        long id = conn(e);
        int[] before = id == 0 ? null : positions(dsts, off, len);
        SSLEngineResult r;
        arm();
        try {
            r = e.unwrap(src, dsts, off, len);
        } finally {
            disarm();
        }
        if (before != null && r.bytesProduced() > 0) {
            moved(id, INGRESS, dsts, off, len, before);
        }
        return r;
    }

    public static void closed(Object conn) {
        if (!loaded) {
            return;
        }
        try {
            TokentapConns.closed(conn);
        } catch (Throwable t) {
            errors++;
        }
    }

    /** Positions of {@code bufs[off..off+len)} before the call; null if unusable. */
    private static int[] positions(ByteBuffer[] bufs, int off, int len) {
        try {
            if (bufs == null || off < 0 || len < 0 || off > bufs.length - len) {
                return null;
            }
            int[] mine = POSITIONS.get();
            int[] p = len <= mine.length ? mine : new int[len];
            for (int i = 0; i < len; i++) {
                ByteBuffer b = bufs[off + i];
                p[i] = b == null ? -1 : b.position();
            }
            return p;
        } catch (Throwable t) {
            errors++;
            return null;
        }
    }

    /** Report each buffer's bytes between its old and new position, in order. */
    private static void moved(long id, int dir, ByteBuffer[] bufs, int off, int len, int[] before) {
        try {
            for (int i = 0; i < len; i++) {
                ByteBuffer b = bufs[off + i];
                if (b == null || before[i] < 0) {
                    continue;
                }
                int from = before[i];
                int to = b.position();
                if (to > from) {
                    report(id, dir, b, from, to - from);
                }
            }
        } catch (Throwable t) {
            errors++;
        }
    }

    private static void report(long id, int dir, byte[] b, int off, int len) {
        try {
            data(id, dir, b, off, len);
        } catch (Throwable t) {
            errors++;
        }
    }

    private static void report(long id, int dir, ByteBuffer b, int from, int len) {
        if (b.hasArray()) {
            report(id, dir, b.array(), b.arrayOffset() + from, len);
        } else if (b.isDirect()) {
            try {
                dataDirect(id, dir, b, from, len);
            } catch (Throwable t) {
                errors++;
            }
        } else {
            // A read-only heap buffer: its array is not reachable, so copy it
            // through a bounded per-thread buffer, chunk by chunk.
            byte[] copy = COPY.get();
            ByteBuffer view = b.duplicate();
            view.position(from);
            int left = len;
            while (left > 0) {
                int n = Math.min(left, copy.length);
                view.get(copy, 0, n);
                report(id, dir, copy, 0, n);
                left -= n;
            }
        }
    }
}

/**
 * Connection ids: one per SSLSocketImpl or SSLEngineImpl object, by identity.
 *
 * An id is {@link #TAG} plus a counter, never reused in a JVM's life, so a new
 * connection never continues an old one's stream in tokentap (object addresses
 * move, identity hash codes collide). Keys are weak: a connection object
 * dropped without a close is reported closed once the collector clears it.
 * Bounded: beyond {@link #MAX} live connections new ones get id 0 and are not
 * reported ({@link #untracked} counts them).
 */
final class TokentapConns {
    /** Bit 62: never set in a user-space pointer (the other capture methods' keys). */
    static final long TAG = 1L << 62;
    static final int MAX = 1 << 16;

    static final ConcurrentHashMap<Object, Long> IDS = new ConcurrentHashMap<>();
    /**
     * Connections never reported: server mode, or closed (an engine's
     * close_notify wrap after closeOutbound). Weak keys, bounded like IDS;
     * when full, a server-mode object is asked its mode again at each call.
     */
    static final ConcurrentHashMap<Object, Boolean> QUIET = new ConcurrentHashMap<>();
    private static final ReferenceQueue<Object> GONE = new ReferenceQueue<>();
    static final AtomicLong NEXT = new AtomicLong();
    static volatile long untracked;

    private TokentapConns() {}

    static long id(Object conn) {
        drain();
        TokentapProbe probe = new TokentapProbe(conn);
        Long known = IDS.get(probe);
        if (known != null) {
            return known;
        }
        if (QUIET.containsKey(probe)) {
            return 0;
        }
        if (!clientMode(conn)) {
            quiet(conn);
            return 0;
        }
        if (IDS.size() >= MAX) {
            untracked++;
            return 0;
        }
        long id = TAG | NEXT.incrementAndGet();
        Long raced = IDS.putIfAbsent(new TokentapKey(conn, GONE, id), id);
        return raced != null ? raced : id;
    }

    static void closed(Object conn) {
        drain();
        // Marked first: a wrap racing with the close allocates no new id.
        quiet(conn);
        Long id = IDS.remove(new TokentapProbe(conn));
        if (id != null) {
            TokentapHooks.close(id);
        }
    }

    /**
     * A client's connection (what calls an LLM API). Asked once per object
     * (the answer is kept in IDS or QUIET): the mode cannot change once the
     * handshake began, which is before the first wrap, read or write.
     */
    private static boolean clientMode(Object conn) {
        if (conn instanceof SSLEngine) {
            return ((SSLEngine) conn).getUseClientMode();
        }
        if (conn instanceof SSLSocket) {
            return ((SSLSocket) conn).getUseClientMode();
        }
        return true;
    }

    private static void quiet(Object conn) {
        if (QUIET.size() < MAX) {
            QUIET.putIfAbsent(new TokentapKey(conn, GONE, 0), Boolean.TRUE);
        }
    }

    /** Report the connections the garbage collector cleared. */
    private static void drain() {
        Object r;
        while ((r = GONE.poll()) != null) {
            TokentapKey k = (TokentapKey) r;
            if (k.id == 0) {
                QUIET.remove(k);
            } else if (IDS.remove(k) != null) {
                TokentapHooks.close(k.id);
            }
        }
    }

    /** Identity of what a stored key or a lookup refers to. */
    static Object target(Object o) {
        if (o instanceof TokentapKey) {
            return ((TokentapKey) o).get();
        }
        return o instanceof TokentapProbe ? ((TokentapProbe) o).conn : null;
    }
}

/** A stored key: weak, with the referent's identity hash and its id. */
final class TokentapKey extends WeakReference<Object> {
    final int hash;
    final long id;

    TokentapKey(Object conn, ReferenceQueue<Object> q, long id) {
        super(conn, q);
        this.hash = System.identityHashCode(conn);
        this.id = id;
    }

    @Override
    public int hashCode() {
        return hash;
    }

    @Override
    public boolean equals(Object o) {
        if (o == this) {
            return true;
        }
        Object t = get();
        return t != null && t == TokentapConns.target(o);
    }
}

/** A lookup key: the connection itself, by identity. */
final class TokentapProbe {
    final Object conn;

    TokentapProbe(Object conn) {
        this.conn = conn;
    }

    @Override
    public int hashCode() {
        return System.identityHashCode(conn);
    }

    @Override
    public boolean equals(Object o) {
        return o == this || (conn != null && conn == TokentapConns.target(o));
    }
}
