// A JDK-only client for the end-to-end tests: JSSE (TLS in Java), chat
// completions, every other one streamed (SSE with include_usage), through
// java.net.http.HttpClient (SSLEngine) over HTTP/1.1 (h1) or HTTP/2 (h2), or
// through HttpsURLConnection (SSLSocket, HTTP/1.1 keep-alive: url).
//
// Usage: java LlmClient.java BASE CA.pem KEY h1|h2|url CALLS [wait]
//        java LlmClient.java BASE CA.pem KEY bench CALLS WARM [wait]
//        java LlmClient.java - CA.pem - download 0
// (bench: `cargo xtask bench`'s client, see `bench` below; download: its
// download bench, see `download`)
// Makes CALLS calls and prints one JSON line:
// {"calls": N, "proto": "HTTP_2", "statuses": [...]}.
// With `wait`, prints "ready", then makes a round of CALLS calls (and prints
// its line) for each line read on stdin, until stdin ends: the test attaches
// agents in between, on the same client and connections.
import java.io.BufferedReader;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class LlmClient {
    public static void main(String[] args) throws Exception {
        String base = args[0];
        Path ca = Path.of(args[1]);
        String key = args[2];
        boolean h2 = args[3].equals("h2");
        boolean url = args[3].equals("url");
        int calls = Integer.parseInt(args[4]);
        boolean wait = args.length > 5 && args[5].equals("wait");

        KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
        trust.load(null, null);
        try (var in = Files.newInputStream(ca)) {
            trust.setCertificateEntry("ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(null, tmf.getTrustManagers(), null);
        HttpClient client = HttpClient.newBuilder()
                .sslContext(tls)
                .version(h2 ? HttpClient.Version.HTTP_2 : HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(20))
                .build();

        if (args[3].equals("download")) {
            download(client);
        } else if (args[3].equals("bench")) {
            bench(client, base, calls, Integer.parseInt(args[5]), args.length > 6 && args[6].equals("wait"));
        } else if (!wait) {
            round(client, base, key, url, calls, tls);
        } else {
            System.out.println("ready");
            System.out.flush();
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
            while (in.readLine() != null) {
                round(client, base, key, url, calls, tls);
            }
        }
        if (factory != null) {
            // The application closes its sockets: their ends are seen.
            for (java.net.Socket sock : factory.made) {
                sock.close();
            }
        }
    }

    /**
     * `cargo xtask bench`: sequential keep-alive HTTP/1.1 POSTs of ~1 KB. With
     * `wait` it prints "ready" and waits for a line on stdin (the bench sends it
     * once tokentap's Java agent is in), so that every call is captured and the
     * attach's own work falls outside the timed calls. Prints the process's CPU
     * time (every thread: JIT and GC included) over the timed calls:
     * {"pid", "cpu_us", "secs"}.
     */
    static void bench(HttpClient client, String base, int calls, int warm, boolean wait) throws Exception {
        if (wait) {
            System.out.println("ready");
            System.out.flush();
            new BufferedReader(new InputStreamReader(System.in)).readLine();
        }
        String body = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"" + "x".repeat(950)
                + "\"}]}";
        HttpRequest req = HttpRequest.newBuilder(URI.create(base + "/chat/completions"))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body))
                .build();
        for (int i = 0; i < warm; i++) {
            client.send(req, HttpResponse.BodyHandlers.ofString());
        }
        var os = (com.sun.management.OperatingSystemMXBean) java.lang.management.ManagementFactory
                .getOperatingSystemMXBean();
        long c0 = os.getProcessCpuTime();
        long t0 = System.nanoTime();
        for (int i = 0; i < calls; i++) {
            HttpResponse<String> r = client.send(req, HttpResponse.BodyHandlers.ofString());
            if (r.statusCode() != 200 || r.body().length() < 900) {
                throw new IllegalStateException("bad response " + r.statusCode());
            }
        }
        double cpuUs = (os.getProcessCpuTime() - c0) / 1000.0;
        double secs = (System.nanoTime() - t0) / 1e9;
        System.out.println("{\"pid\": " + ProcessHandle.current().pid() + ", \"cpu_us\": " + cpuUs + ", \"secs\": "
                + secs + "}");
    }

    /**
     * `cargo xtask bench --only-download`: prints "ready", then for each line
     * "URL TIMES" read on stdin downloads URL TIMES times over the client's
     * keep-alive connection, reading each body to its end, and prints
     * {"bytes", "cpu_us"}: the process's CPU time (every thread) over them.
     * One JVM serves every run of one side of the bench's pair, so that
     * tokentap's Java agent, loaded once, sees the timed run from its first byte.
     */
    static void download(HttpClient client) throws Exception {
        System.out.println("ready");
        System.out.flush();
        var os = (com.sun.management.OperatingSystemMXBean) java.lang.management.ManagementFactory
                .getOperatingSystemMXBean();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        byte[] sink = new byte[64 * 1024];
        for (String line; (line = in.readLine()) != null;) {
            String[] w = line.trim().split(" ");
            HttpRequest req = HttpRequest.newBuilder(URI.create(w[0])).build();
            long c0 = os.getProcessCpuTime();
            long bytes = 0;
            for (int i = 0; i < Integer.parseInt(w[1]); i++) {
                HttpResponse<InputStream> r = client.send(req, HttpResponse.BodyHandlers.ofInputStream());
                if (r.statusCode() != 200) {
                    throw new IllegalStateException("status " + r.statusCode());
                }
                try (InputStream body = r.body()) {
                    for (int n; (n = body.read(sink)) > 0;) {
                        bytes += n;
                    }
                }
            }
            double cpuUs = (os.getProcessCpuTime() - c0) / 1000.0;
            System.out.println("{\"bytes\": " + bytes + ", \"cpu_us\": " + cpuUs + "}");
            System.out.flush();
        }
    }

    static void round(HttpClient client, String base, String key, boolean url, int calls, SSLContext tls)
            throws Exception {
        List<Integer> statuses = new ArrayList<>();
        String proto = "";
        for (int i = 0; i < calls; i++) {
            boolean stream = i % 2 == 1;
            String body = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"java call " + i
                    + "\"}]" + (stream ? ",\"stream\":true,\"stream_options\":{\"include_usage\":true}" : "") + "}";
            HttpRequest req = HttpRequest.newBuilder(URI.create(base + "/chat/completions"))
                    .header("Authorization", "Bearer " + key)
                    .header("Content-Type", "application/json")
                    .timeout(Duration.ofSeconds(30))
                    .POST(HttpRequest.BodyPublishers.ofString(body))
                    .build();
            if (url) {
                statuses.add(viaUrlConnection(base, key, body, stream, tls));
                proto = "HTTP_1_1";
            } else if (stream) {
                HttpResponse<java.util.stream.Stream<String>> r = client.send(req, HttpResponse.BodyHandlers.ofLines());
                List<String> lines = r.body().collect(Collectors.toList());
                if (lines.stream().noneMatch(l -> l.equals("data: [DONE]"))) {
                    throw new IllegalStateException("stream without [DONE]: " + lines);
                }
                statuses.add(r.statusCode());
                proto = r.version().toString();
            } else {
                HttpResponse<String> r = client.send(req, HttpResponse.BodyHandlers.ofString());
                if (!r.body().contains("\"usage\"")) {
                    throw new IllegalStateException("no usage: " + r.body());
                }
                statuses.add(r.statusCode());
                proto = r.version().toString();
            }
        }
        System.out.println("{\"calls\": " + statuses.size() + ", \"proto\": \"" + proto + "\", \"statuses\": "
                + statuses + "}");
        System.out.flush();
    }

    static Remembering factory;

    /** Creates sockets through `inner` and remembers them, to close them at the end. */
    static final class Remembering extends javax.net.ssl.SSLSocketFactory {
        final javax.net.ssl.SSLSocketFactory inner;
        final List<java.net.Socket> made = new ArrayList<>();

        Remembering(javax.net.ssl.SSLSocketFactory inner) {
            this.inner = inner;
        }

        java.net.Socket keep(java.net.Socket s) {
            made.add(s);
            return s;
        }

        public String[] getDefaultCipherSuites() {
            return inner.getDefaultCipherSuites();
        }

        public String[] getSupportedCipherSuites() {
            return inner.getSupportedCipherSuites();
        }

        public java.net.Socket createSocket() throws java.io.IOException {
            return keep(inner.createSocket());
        }

        public java.net.Socket createSocket(java.net.Socket s, String h, int p, boolean a) throws java.io.IOException {
            return keep(inner.createSocket(s, h, p, a));
        }

        public java.net.Socket createSocket(String h, int p) throws java.io.IOException {
            return keep(inner.createSocket(h, p));
        }

        public java.net.Socket createSocket(String h, int p, java.net.InetAddress l, int lp) throws java.io.IOException {
            return keep(inner.createSocket(h, p, l, lp));
        }

        public java.net.Socket createSocket(java.net.InetAddress h, int p) throws java.io.IOException {
            return keep(inner.createSocket(h, p));
        }

        public java.net.Socket createSocket(java.net.InetAddress h, int p, java.net.InetAddress l, int lp)
                throws java.io.IOException {
            return keep(inner.createSocket(h, p, l, lp));
        }
    }

    /** One call through HttpsURLConnection (an SSLSocket, kept alive between calls). */
    static int viaUrlConnection(String base, String key, String body, boolean stream, SSLContext tls)
            throws Exception {
        HttpsURLConnection c = (HttpsURLConnection) new URL(base + "/chat/completions").openConnection();
        // One factory for every call: the keep-alive cache reuses the socket.
        if (factory == null) {
            factory = new Remembering(tls.getSocketFactory());
        }
        c.setSSLSocketFactory(factory);
        c.setRequestMethod("POST");
        c.setDoOutput(true);
        c.setRequestProperty("Authorization", "Bearer " + key);
        c.setRequestProperty("Content-Type", "application/json");
        try (OutputStream out = c.getOutputStream()) {
            out.write(body.getBytes(StandardCharsets.UTF_8));
        }
        String text;
        try (InputStream in = c.getInputStream()) {
            text = new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
        if (stream ? !text.contains("data: [DONE]") : !text.contains("\"usage\"")) {
            throw new IllegalStateException("unexpected body: " + text);
        }
        return c.getResponseCode();
    }
}
