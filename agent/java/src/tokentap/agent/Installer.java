package tokentap.agent;

import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.security.ProtectionDomain;
import java.util.ArrayList;
import java.util.Enumeration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;

/**
 * Installs the hooks, in a private class loader (see {@link Agent}):
 * 1. if {@code sun.security.ssl.TokentapHooks} exists, an earlier tokentap
 *    agent defined it: that install's outcome is the answer (a JVM is patched
 *    once in its life). The class exists from step 2 on, whatever happens
 *    next, so its existence says nothing; its {@code state()} does ("ok
 *    already installed ..." only if that install completed, else "error");
 * 2. opens java.base's sun.security.ssl to this loader's module only, and
 *    defines the hook classes (stored in the jar under {@code tokentap/hooks/})
 *    into that package through a private lookup;
 * 3. loads libtokentap_java.so from the directory tokentap placed it in,
 *    and waits (bounded) until tokentap's uprobe sits on it;
 * 4. patches the methods of {@link #SITES} (a transformer that stays
 *    registered, so a later retransformation by another agent keeps them);
 * 5. records the outcome in the hooks class: installed only if all of it
 *    succeeded.
 * Returns a one-line status: "ok ...", "partial ..." or "error ...".
 */
public final class Installer {
    private static final String SOCK = "sun/security/ssl/SSLSocketImpl";
    private static final String ENGINE = "sun/security/ssl/SSLEngineImpl";
    private static final String BUFS = "[Ljava/nio/ByteBuffer;";
    private static final String BUF = "Ljava/nio/ByteBuffer;";
    private static final String RESULT = "Ljavax/net/ssl/SSLEngineResult;";
    private static final String HOOKS = "sun.security.ssl.TokentapHooks";
    /** How long to wait for tokentap's probe on the native library. */
    private static final long PROBE_WAIT_NS = 10_000_000_000L;

    static final ClassPatch.Site[] SITES = {
        new ClassPatch.Site(SOCK + "$AppInputStream", "read", "([BII)I", "sockRead", "Ljava/io/InputStream;",
                "this$0", "L" + SOCK + ";", true),
        new ClassPatch.Site(SOCK + "$AppOutputStream", "write", "([BII)V", "sockWrite", "Ljava/io/OutputStream;",
                "this$0", "L" + SOCK + ";", true),
        new ClassPatch.Site(ENGINE, "wrap", "(" + BUFS + "II" + BUF + ")" + RESULT, "engineWrap",
                "Ljavax/net/ssl/SSLEngine;", null, null, true),
        new ClassPatch.Site(ENGINE, "unwrap", "(" + BUF + BUFS + "II)" + RESULT, "engineUnwrap",
                "Ljavax/net/ssl/SSLEngine;", null, null, true),
        new ClassPatch.Site(SOCK, "close", "()V", "closed", "Ljava/lang/Object;", null, null, false),
        new ClassPatch.Site(ENGINE, "closeOutbound", "()V", "closed", "Ljava/lang/Object;", null, null, false),
    };

    private Installer() {}

    public static String install(String dir, Instrumentation inst) throws Throwable {
        Class<?> anchor = Class.forName("sun.security.ssl.SSLSocketImpl", false, null);
        Module base = anchor.getModule();
        // Opened to this loader's module (each tokentap agent loaded has its own).
        inst.redefineModule(base, Set.of(), Map.of(), Map.of("sun.security.ssl", Set.of(Installer.class.getModule())),
                Set.of(), Map.of());
        MethodHandles.Lookup lookup = MethodHandles.privateLookupIn(anchor, MethodHandles.lookup());
        Class<?> earlier = null;
        try {
            earlier = Class.forName(HOOKS, false, null);
        } catch (ClassNotFoundException expected) {
            // Not installed yet.
        }
        if (earlier != null) {
            return earlier(lookup, earlier);
        }
        defineHooks(lookup, dir + "/tokentap-java.jar");
        Class<?> hooks = Class.forName(HOOKS, false, null);
        MethodHandle outcome = lookup.findStatic(hooks, "installed",
                MethodType.methodType(void.class, boolean.class, String.class));
        try {
            String status = patch(dir, inst, lookup, hooks);
            outcome.invoke(status.startsWith("ok"), status);
            return status;
        } catch (Throwable t) {
            outcome.invoke(false, t.toString());
            throw t;
        }
    }

    /** What the install of an earlier tokentap agent came to (public for tests/tests/java_patch.rs). */
    public static String earlier(MethodHandles.Lookup lookup, Class<?> hooks) throws Throwable {
        String state;
        try {
            state = (String) lookup.findStatic(hooks, "state", MethodType.methodType(String.class)).invoke();
        } catch (NoSuchMethodException | IllegalAccessException e) {
            return "error the hooks of an older tokentap build are installed, in an unknown state";
        }
        if (state.startsWith("installed ")) {
            return "ok already installed, " + state.substring("installed ".length());
        }
        return "error an earlier install did not complete (" + state + ")";
    }

    /** Steps 3 and 4; the status line. */
    private static String patch(String dir, Instrumentation inst, MethodHandles.Lookup lookup, Class<?> hooks)
            throws Throwable {
        lookup.findStatic(hooks, "load", MethodType.methodType(void.class, String.class))
                .invoke(dir + "/libtokentap_java.so");
        // The tokentap agent probes the library once it sees it in this
        // process's maps; report nothing before that (it would be lost).
        MethodHandle probed = lookup.findStatic(hooks, "probed", MethodType.methodType(boolean.class));
        long deadline = System.nanoTime() + PROBE_WAIT_NS;
        boolean seen;
        while (!(seen = (boolean) probed.invoke()) && System.nanoTime() < deadline) {
            Thread.sleep(10);
        }
        lookup.findStatic(hooks, "enable", MethodType.methodType(void.class)).invoke();

        Patcher patcher = new Patcher();
        inst.addTransformer(patcher, true);
        List<String> missing = new ArrayList<>();
        for (String name : patcher.byClass.keySet()) {
            try {
                // Loaded now if the application has not yet: the transformer patches it.
                inst.retransformClasses(Class.forName(name.replace('/', '.'), false, null));
            } catch (Throwable t) {
                missing.add(name + ": " + t);
            }
        }
        StringBuilder sb = new StringBuilder(patcher.failed.isEmpty() && missing.isEmpty() ? "ok" : "partial");
        sb.append(seen ? " probed" : " unprobed");
        for (ClassPatch.Site s : SITES) {
            String state = patcher.failed.containsKey(s.name()) ? "refused"
                    : patcher.done.contains(s.name()) ? "patched" : "not-seen";
            sb.append(' ').append(s.owner.substring(s.owner.lastIndexOf('/') + 1)).append('.').append(s.method)
                    .append('=').append(state);
        }
        for (Map.Entry<String, String> f : patcher.failed.entrySet()) {
            sb.append("; ").append(f.getKey()).append(": ").append(f.getValue());
        }
        for (String m : missing) {
            sb.append("; ").append(m);
        }
        return sb.toString();
    }

    /**
     * Define every class under tokentap/hooks/ in the jar. They name no
     * supertype of their own, so any order links; a failure leaves the rest
     * undefined and is reported.
     */
    private static void defineHooks(MethodHandles.Lookup lookup, String jar) throws Exception {
        try (JarFile f = new JarFile(jar)) {
            Enumeration<JarEntry> entries = f.entries();
            while (entries.hasMoreElements()) {
                JarEntry e = entries.nextElement();
                if (e.getName().startsWith("tokentap/hooks/") && e.getName().endsWith(".bin")) {
                    try (InputStream in = f.getInputStream(e)) {
                        lookup.defineClass(readAll(in));
                    }
                }
            }
        }
    }

    private static byte[] readAll(InputStream in) throws java.io.IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] buf = new byte[8192];
        int n;
        while ((n = in.read(buf)) > 0) {
            out.write(buf, 0, n);
        }
        return out.toByteArray();
    }

    /** Patches the sites of the classes it is handed; every other class passes untouched. */
    static final class Patcher implements ClassFileTransformer {
        final Map<String, List<ClassPatch.Site>> byClass = new LinkedHashMap<>();
        final Map<String, String> failed = new ConcurrentHashMap<>();
        final Set<String> done = ConcurrentHashMap.newKeySet();

        Patcher() {
            for (ClassPatch.Site s : SITES) {
                byClass.computeIfAbsent(s.owner, k -> new ArrayList<>()).add(s);
            }
        }

        @Override
        public byte[] transform(Module module, ClassLoader loader, String name, Class<?> redefining,
                ProtectionDomain pd, byte[] bytes) {
            List<ClassPatch.Site> sites = loader == null ? byClass.get(name) : null;
            if (sites == null) {
                return null;
            }
            byte[] out = bytes;
            for (ClassPatch.Site s : sites) {
                try {
                    out = ClassPatch.apply(out, s);
                    done.add(s.name());
                } catch (ClassPatch.Refused r) {
                    failed.put(s.name(), r.getMessage());
                } catch (Throwable t) {
                    failed.put(s.name(), t.toString());
                }
            }
            return out == bytes ? null : out;
        }
    }
}
