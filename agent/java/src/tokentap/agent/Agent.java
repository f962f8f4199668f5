package tokentap.agent;

import java.io.File;
import java.io.FileOutputStream;
import java.lang.instrument.Instrumentation;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * tokentap's Java agent, loaded into a running JVM by the tokentap agent
 * through HotSpot's dynamic attach ({@code agentmain}).
 *
 * The JVM puts this jar on the application's class path; this class only
 * starts {@link Installer} from a class loader of its own (parent: the
 * bootstrap loader), so that what the installer is granted (java.base's
 * sun.security.ssl package opened to its module) is granted to tokentap's
 * private module, not to the application's unnamed module.
 *
 * Arguments: {@code dir=<directory>;status=<file name>}, as the JVM sees
 * them. The outcome goes to the status file, which the tokentap agent reads;
 * nothing is printed and nothing is thrown into the JVM.
 */
public final class Agent {
    private Agent() {}

    public static void agentmain(String args, Instrumentation inst) {
        Map<String, String> opts = options(args);
        String dir = opts.get("dir");
        String status;
        try {
            if (dir == null) {
                throw new IllegalArgumentException("no dir= argument");
            }
            URL jar = new File(dir, "tokentap-java.jar").toURI().toURL();
            ClassLoader own = new URLClassLoader(new URL[] {jar}, null);
            Class<?> installer = Class.forName("tokentap.agent.Installer", true, own);
            status = (String) installer.getMethod("install", String.class, Instrumentation.class)
                    .invoke(null, dir, inst);
        } catch (java.lang.reflect.InvocationTargetException e) {
            status = "error " + e.getCause();
        } catch (Throwable t) {
            status = "error " + t;
        }
        String file = opts.get("status");
        if (dir != null && file != null && file.indexOf('/') < 0) {
            try (FileOutputStream out = new FileOutputStream(new File(dir, file))) {
                out.write((status + "\n").getBytes(StandardCharsets.UTF_8));
            } catch (Throwable ignored) {
                // The tokentap agent then reports the attach as unconfirmed.
            }
        }
    }

    static Map<String, String> options(String args) {
        Map<String, String> m = new LinkedHashMap<>();
        if (args == null) {
            return m;
        }
        for (String kv : args.split(";")) {
            int eq = kv.indexOf('=');
            if (eq > 0) {
                m.put(kv.substring(0, eq), kv.substring(eq + 1));
            }
        }
        return m;
    }
}
