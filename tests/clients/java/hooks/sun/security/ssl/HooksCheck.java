package sun.security.ssl;

import java.io.FileInputStream;
import java.lang.invoke.MethodHandles;
import java.net.InetAddress;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

/**
 * Checks TokentapHooks' choice of what to report, in java.base's own package
 * (run with --patch-module, as the agent defines it there): real JSSE
 * engines and sockets, a real TLS 1.3 handshake between a client and a
 * server engine in memory, driven through the hooks as the patched methods
 * call them.
 *
 * The native library is not loaded here: every report reaches a native
 * method that is not linked, which TokentapHooks counts in {@code errors}.
 * So {@code errors} counts exactly the native calls the hooks made.
 *
 * Args: a PKCS12 key store (a self-signed key) and its password. Prints "ok".
 */
public final class HooksCheck {
    private static final ByteBuffer[] NONE = {ByteBuffer.allocate(0)};

    public static void main(String[] args) throws Throwable {
        char[] pw = args[1].toCharArray();
        KeyStore store = KeyStore.getInstance("PKCS12");
        try (FileInputStream in = new FileInputStream(args[0])) {
            store.load(in, pw);
        }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(store, pw);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(store);
        SSLContext ctx = SSLContext.getInstance("TLSv1.3");
        ctx.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);

        installState();
        TokentapHooks.enable();
        engines(ctx);
        sockets(ctx);
        System.out.println("ok");
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what + " (errors=" + TokentapHooks.errors + ", ids=" + TokentapConns.IDS.size()
                    + ", quiet=" + TokentapConns.QUIET.size() + ")");
        }
    }

    /** An earlier install is "already installed" only once it completed. */
    static void installState() throws Throwable {
        Class<?> installer = Class.forName("tokentap.agent.Installer", true, ClassLoader.getSystemClassLoader());
        java.lang.reflect.Method earlier =
                installer.getMethod("earlier", MethodHandles.Lookup.class, Class.class);
        MethodHandles.Lookup lookup = MethodHandles.lookup();
        // Hooks defined, library load failed (a noexec /tmp): not installed.
        TokentapHooks.installed(false, "java.lang.UnsatisfiedLinkError: failed to map segment from shared object");
        String s = (String) earlier.invoke(null, lookup, TokentapHooks.class);
        check(s.startsWith("error an earlier install did not complete") && s.contains("library=none")
                && s.contains("UnsatisfiedLinkError"), s);
        TokentapHooks.installed(false, null);
        s = (String) earlier.invoke(null, lookup, TokentapHooks.class);
        check(s.startsWith("error ") && s.contains("stopped before it finished"), s);
        TokentapHooks.installed(true, "ok probed");
        s = (String) earlier.invoke(null, lookup, TokentapHooks.class);
        check(s.equals("ok already installed, library=none"), s);
    }

    static void engines(SSLContext ctx) throws Throwable {
        SSLEngine client = ctx.createSSLEngine("localhost", 443);
        client.setUseClientMode(true);
        SSLEngine server = ctx.createSSLEngine();
        server.setUseClientMode(false);
        ByteBuffer c2s = ByteBuffer.allocate(1 << 17);
        ByteBuffer s2c = ByteBuffer.allocate(1 << 17);
        ByteBuffer cApp = ByteBuffer.allocate(1 << 17);
        ByteBuffer sApp = ByteBuffer.allocate(1 << 17);
        client.beginHandshake();
        server.beginHandshake();
        for (int i = 0; i < 100 && (busy(client) || busy(server)); i++) {
            wrap(client, NONE, c2s);
            unwrap(server, c2s, sApp);
            wrap(server, NONE, s2c);
            unwrap(client, s2c, cApp);
        }
        check(!busy(client) && !busy(server), "handshake done");
        check(TokentapHooks.errors == 0, "no application data yet: no native call");
        check(TokentapConns.QUIET.containsKey(new TokentapProbe(server)), "the server engine is marked, once");
        check(!TokentapConns.IDS.containsKey(new TokentapProbe(server)), "the server engine has no id");
        long clientId = TokentapHooks.conn(client);
        check(clientId != 0 && TokentapConns.IDS.size() == 1, "the client engine has an id");

        // Server to client: only the client's unwrap reports.
        wrap(server, bufs("world"), s2c);
        check(TokentapHooks.errors == 0, "the server's wrap reports nothing");
        unwrap(client, s2c, cApp);
        check(text(cApp).endsWith("world"), "delivered: " + text(cApp));
        check(TokentapHooks.errors == 1, "the client's unwrap reports");
        // Client to server: only the client's wrap reports.
        wrap(client, bufs("hello"), c2s);
        check(TokentapHooks.errors == 2, "the client's wrap reports");
        unwrap(server, c2s, sApp);
        check(text(sApp).endsWith("hello"), "delivered: " + text(sApp));
        check(TokentapHooks.errors == 2, "the server's unwrap reports nothing");

        // closeOutbound (its hook runs first), then the close_notify wrap: no new id.
        long next = TokentapConns.NEXT.get();
        TokentapHooks.closed(client);
        client.closeOutbound();
        check(TokentapHooks.errors == 3, "the close reaches the native side once");
        check(TokentapConns.IDS.isEmpty(), "the id is gone");
        SSLEngineResult r = wrap(client, NONE, c2s);
        check(r.bytesProduced() > 0 && client.isOutboundDone(), "close_notify wrapped");
        unwrap(server, c2s, sApp);
        unwrap(client, s2c, cApp);
        check(TokentapConns.NEXT.get() == next && TokentapConns.IDS.isEmpty(), "no id after the close");
        check(TokentapHooks.conn(client) == 0, "a closed engine stays quiet");
        check(TokentapHooks.errors == 3, "nothing more reported");
    }

    static void sockets(SSLContext ctx) throws Throwable {
        int ids = TokentapConns.IDS.size();
        SSLSocket plain = (SSLSocket) ctx.getSocketFactory().createSocket();
        plain.setUseClientMode(false);
        check(TokentapHooks.conn(plain) == 0, "a server-mode socket has no id");
        try (SSLServerSocket listener =
                (SSLServerSocket) ctx.getServerSocketFactory().createServerSocket(0, 1, InetAddress.getLoopbackAddress());
                SSLSocket out = (SSLSocket) ctx.getSocketFactory().createSocket(InetAddress.getLoopbackAddress(),
                        listener.getLocalPort());
                SSLSocket in = (SSLSocket) listener.accept()) {
            check(TokentapHooks.conn(in) == 0, "an accepted socket (server mode) has no id");
            check(TokentapHooks.conn(in) == 0, "asked again: still none");
            check(TokentapConns.IDS.size() == ids, "no slot taken");
            check(TokentapHooks.conn(out) != 0, "the client socket has one");
        }
    }

    static boolean busy(SSLEngine e) {
        SSLEngineResult.HandshakeStatus h = e.getHandshakeStatus();
        return h != SSLEngineResult.HandshakeStatus.NOT_HANDSHAKING && h != SSLEngineResult.HandshakeStatus.FINISHED;
    }

    static ByteBuffer[] bufs(String s) {
        return new ByteBuffer[] {ByteBuffer.wrap(s.getBytes(StandardCharsets.US_ASCII))};
    }

    static String text(ByteBuffer b) {
        return new String(b.array(), 0, b.position(), StandardCharsets.US_ASCII);
    }

    static SSLEngineResult wrap(SSLEngine e, ByteBuffer[] src, ByteBuffer out) throws Throwable {
        SSLEngineResult r = TokentapHooks.engineWrap(e, src, 0, src.length, out);
        tasks(e);
        return r;
    }

    /** Unwrap all of {@code in} (a write-mode buffer) into {@code app}. */
    static void unwrap(SSLEngine e, ByteBuffer in, ByteBuffer app) throws Throwable {
        in.flip();
        while (in.hasRemaining()) {
            SSLEngineResult r = TokentapHooks.engineUnwrap(e, in, new ByteBuffer[] {app}, 0, 1);
            tasks(e);
            if (r.getStatus() != SSLEngineResult.Status.OK || r.bytesConsumed() == 0) {
                break;
            }
        }
        in.compact();
    }

    static void tasks(SSLEngine e) {
        Runnable t;
        while ((t = e.getDelegatedTask()) != null) {
            t.run();
        }
    }
}
