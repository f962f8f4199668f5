// A java.net.http.HttpClient client for the end-to-end tests: JSSE (TLS in
// Java, SSLEngine), HTTP/1.1 or HTTP/2, chat completions, every other one
// streamed (SSE with include_usage). JDK only.
//
// Usage: java LlmClient.java BASE CA.pem KEY h1|h2 CALLS [wait]
// With `wait`, prints "ready" and waits for a line on stdin before calling
// (the test attaches the agent meanwhile). Prints one JSON line:
// {"calls": N, "proto": "HTTP_2", "statuses": [...]}.
import java.io.BufferedReader;
import java.io.InputStreamReader;
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
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class LlmClient {
    public static void main(String[] args) throws Exception {
        String base = args[0];
        Path ca = Path.of(args[1]);
        String key = args[2];
        boolean h2 = args[3].equals("h2");
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

        if (wait) {
            System.out.println("ready");
            System.out.flush();
            new BufferedReader(new InputStreamReader(System.in)).readLine();
        }

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
            if (stream) {
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
    }
}
