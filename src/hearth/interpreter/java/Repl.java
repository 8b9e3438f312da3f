package hearth;

import java.io.BufferedInputStream;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodType;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.regex.Pattern;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.stream.Collectors;

import jdk.incubator.foreign.CLinker;
import jdk.incubator.foreign.FunctionDescriptor;
import jdk.incubator.foreign.MemoryAddress;
import jdk.incubator.foreign.ResourceScope;
import jdk.jshell.DeclarationSnippet;
import jdk.jshell.Diag;
import jdk.jshell.EvalException;
import jdk.jshell.JShell;
import jdk.jshell.JShellException;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.SourceCodeAnalysis.Completeness;
import jdk.jshell.UnresolvedReferenceException;
import jdk.jshell.execution.DirectExecutionControl;
import jdk.jshell.spi.ExecutionControl;
import jdk.jshell.spi.ExecutionControlProvider;
import jdk.jshell.spi.ExecutionEnv;

/**
 * The Java side of Hearth's java kernel: one JShell whose snippets run in this JVM.
 *
 * <p>Requests arrive on stdin: {@code eval <n>\n} and n bytes of UTF-8 code, or {@code stop\n}
 * (end what the last eval runs). Replies are JSON lines on the file descriptor given as the
 * only argument: {@code {"ready":true}} once JShell is warm; while code runs
 * {@code {"stream":"stdout"|"stderr","text":...}}; then {@code {"done":true}} with the last
 * snippet's value as {@code "result"} (its text, as IJava shows it) or an {@code "error"}
 * ({@code ename}, {@code evalue}, {@code traceback}, named as IJava names them). The end of
 * stdin ends the JVM.
 */
public final class Repl {
    // What the jshell tool imports at start (its DEFAULT startup), and IJava's printf.
    private static final String STARTUP = String.join("\n",
            "import java.io.*;", "import java.math.*;", "import java.net.*;",
            "import java.nio.file.*;", "import java.util.*;", "import java.util.concurrent.*;",
            "import java.util.function.*;", "import java.util.prefs.*;",
            "import java.util.regex.*;", "import java.util.stream.*;",
            "void printf(String format, Object... args) { System.out.printf(format, args); }");
    // Compiled and dropped at start: javac's first snippets are slow, the user's should not be.
    private static final String[] WARMUP = {
        "1 + 1", "String warm = \"up\" + 1;", "warm.length()", "int[] ints = {1, 2};",
        "for (int i : ints) { warm += i; }", "Math.max(ints[0], 2)",
        "System.getProperty(\"user.dir\", \"\");",
        // The interpreter's env-var snippets, and the foreign linker they start.
        "hearth.Repl.setenv(\"HEARTH_WARMUP\", \"1\");", "hearth.Repl.unsetenv(\"HEARTH_WARMUP\");",
    };
    private static final int STREAM_LIMIT = 1 << 16; // bytes held before they are sent
    private static final long OUTPUT_DELAY = 50; // ms output waits to be sent with more

    private final Wire wire;
    private final Capture stdout;
    private final Capture stderr;
    private final Object written = new Object(); // notified when a capture has new output
    private boolean unsent;
    private final Control control = new Control();
    private final BlockingQueue<Request> requests = new LinkedBlockingQueue<>();
    private JShell shell;

    private Repl(Wire wire) {
        this.wire = wire;
        this.stdout = new Capture(this, "stdout");
        this.stderr = new Capture(this, "stderr");
    }

    public static void main(String[] args) throws Exception {
        InputStream in = new FileInputStream(FileDescriptor.in);
        Wire wire = new Wire(new FileOutputStream("/proc/self/fd/" + Integer.parseInt(args[0])));
        Repl repl = new Repl(wire);
        // The user's code sees no stdin (the requests are on it) and prints into the replies.
        System.setIn(new ByteArrayInputStream(new byte[0]));
        System.setOut(new PrintStream(repl.stdout, true, StandardCharsets.UTF_8));
        System.setErr(new PrintStream(repl.stderr, true, StandardCharsets.UTF_8));
        Thread sender = new Thread(repl::sendOutput, "hearth-output");
        sender.setDaemon(true);
        sender.start();
        repl.start();
        Thread reader = new Thread(() -> repl.read(in), "hearth-requests");
        reader.setDaemon(true);
        reader.start();
        repl.serve();
    }

    // -- Environment variables, as the interpreter sets them (spec §4.3) ------------------

    /**
     * Sets a variable of the sandbox's environment for the code that runs here: as a system
     * property (as E2B's java contexts have them), in {@link System#getenv()} (which a
     * ProcessBuilder's environment() starts from) and in this process's own environment, which
     * a child gets when its environment was never asked for (Runtime.exec, a plain
     * ProcessBuilder), as children of the other languages' kernels get it.
     */
    public static void setenv(String key, String value) {
        System.setProperty(key, value);
        try {
            environment().put(key, value);
        } catch (IllegalArgumentException e) {
            return; // a name or value the environment cannot hold ('=', NUL): a property only
        }
        Native.setenv(key, value);
    }

    public static void unsetenv(String key) {
        System.clearProperty(key);
        try {
            environment().remove(key);
        } catch (IllegalArgumentException e) {
            return;
        }
        Native.unsetenv(key);
    }

    /** The modifiable map behind {@code System.getenv()} (needs java.util opened). */
    @SuppressWarnings("unchecked")
    private static Map<String, String> environment() {
        Map<String, String> view = System.getenv();
        try {
            Field inner = view.getClass().getDeclaredField("m");
            inner.setAccessible(true);
            return (Map<String, String>) inner.get(view);
        } catch (ReflectiveOperationException | RuntimeException e) {
            return new HashMap<>(); // properties still carry the value
        }
    }

    /**
     * libc's setenv and unsetenv, through JDK 17's foreign linker (the kernel starts the JVM
     * with jdk.incubator.foreign and native access): the JDK itself never changes its process's
     * environment. Names reach here only once the JDK's map took them, so they hold no '=' and
     * no NUL. They run in the interpreter's snippets between the user's cells; a thread of the
     * user's that reads the environment meanwhile runs the risk libc's setenv has in any program.
     */
    private static final class Native {
        private static final MethodHandle SETENV = function("setenv",
                MethodType.methodType(int.class, MemoryAddress.class, MemoryAddress.class, int.class),
                FunctionDescriptor.of(CLinker.C_INT, CLinker.C_POINTER, CLinker.C_POINTER, CLinker.C_INT));
        private static final MethodHandle UNSETENV = function("unsetenv",
                MethodType.methodType(int.class, MemoryAddress.class),
                FunctionDescriptor.of(CLinker.C_INT, CLinker.C_POINTER));

        private static MethodHandle function(String name, MethodType type, FunctionDescriptor descriptor) {
            MemoryAddress symbol = CLinker.systemLookup().lookup(name).orElseThrow();
            return CLinker.getInstance().downcallHandle(symbol, type, descriptor);
        }

        /** libc's status: -1 only when out of memory (ENOMEM), the name being valid. */
        static int setenv(String key, String value) {
            try (ResourceScope scope = ResourceScope.newConfinedScope()) {
                return (int) SETENV.invokeExact(CLinker.toCString(key, scope).address(),
                        CLinker.toCString(value, scope).address(), 1);
            } catch (Throwable e) {
                throw new IllegalStateException("setenv " + key, e);
            }
        }

        static int unsetenv(String key) {
            try (ResourceScope scope = ResourceScope.newConfinedScope()) {
                return (int) UNSETENV.invokeExact(CLinker.toCString(key, scope).address());
            } catch (Throwable e) {
                throw new IllegalStateException("unsetenv " + key, e);
            }
        }
    }

    // -- Requests --------------------------------------------------------------------------

    private static final class Request {
        final String code;
        volatile boolean stopped;
        volatile boolean done;

        Request(String code) {
            this.code = code;
        }
    }

    /** On its own thread: evals go to the queue, a stop acts at once. */
    private void read(InputStream raw) {
        DataInputStream in = new DataInputStream(new BufferedInputStream(raw));
        Request latest = null;
        try {
            while (true) {
                String header = readLine(in);
                if (header.startsWith("eval ")) {
                    byte[] code = new byte[Integer.parseInt(header.substring(5))];
                    in.readFully(code);
                    latest = new Request(new String(code, StandardCharsets.UTF_8));
                    requests.put(latest);
                } else if (header.equals("stop") && latest != null) {
                    stop(latest);
                }
            }
        } catch (IOException | InterruptedException | RuntimeException e) {
            // The kernel is gone (or spoke nonsense): so is this JVM, whatever runs.
        }
        Runtime.getRuntime().halt(0);
    }

    private static String readLine(DataInputStream in) throws IOException {
        StringBuilder line = new StringBuilder();
        for (int b = in.read(); b != '\n'; b = in.read()) {
            if (b < 0) {
                throw new EOFException();
            }
            line.append((char) b);
        }
        return line.toString();
    }

    /**
     * Ends `request`: its snippet's thread is stopped, again until the request is done (a
     * stop can land while javac compiles, before the thread runs), and no later snippet of
     * it runs.
     */
    private void stop(Request request) throws InterruptedException {
        request.stopped = true;
        while (!request.done) {
            control.stopRunning();
            Thread.sleep(20);
        }
    }

    private void serve() throws InterruptedException {
        while (true) {
            Request request = requests.take();
            control.current = request;
            String reply;
            try {
                reply = evaluate(request);
            } catch (RuntimeException | Error e) {
                reply = done(null, error(e.getClass().getSimpleName(), String.valueOf(e.getMessage()),
                        List.of(stackTrace(e))));
            }
            drainOutput();
            control.values.clear();
            request.done = true;
            wire.send(reply);
        }
    }

    // -- Output ----------------------------------------------------------------------------

    /** Sends what was printed, at most OUTPUT_DELAY after it was (and at once when asked). */
    private void sendOutput() {
        try {
            while (true) {
                synchronized (written) {
                    while (!unsent) {
                        written.wait();
                    }
                    unsent = false;
                }
                Thread.sleep(OUTPUT_DELAY);
                drainOutput();
            }
        } catch (InterruptedException e) {
            // ends with the JVM
        }
    }

    private void printed() {
        synchronized (written) {
            if (!unsent) {
                unsent = true;
                written.notify();
            }
        }
    }

    private void drainOutput() {
        stdout.drain();
        stderr.drain();
    }

    // -- JShell ----------------------------------------------------------------------------

    private void start() {
        shell = JShell.builder()
                .executionEngine(new ExecutionControlProvider() {
                    @Override
                    public String name() {
                        return "hearth";
                    }

                    @Override
                    public ExecutionControl generate(ExecutionEnv env, Map<String, String> p) {
                        return control;
                    }
                }, Map.of())
                .in(new ByteArrayInputStream(new byte[0]))
                .out(System.out)
                .err(System.err)
                .build();
        try {
            // Snippets may call this class (the interpreter's env vars do).
            Path classes = Path.of(Repl.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            shell.addToClasspath(classes.toString());
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
        Request startup = new Request(STARTUP);
        control.current = startup;
        evaluate(startup);
        for (String code : WARMUP) {
            for (SnippetEvent event : shell.eval(code)) {
                if (event.causeSnippet() == null) {
                    shell.drop(event.snippet());
                }
            }
        }
        control.values.clear();
        drainOutput();
        wire.send("{\"ready\":true}");
    }

    private static final Object NO_VALUE = new Object();

    /** The reply to one request: its snippets in order, until one fails. */
    private String evaluate(Request request) {
        SourceCodeAnalysis analysis = shell.sourceCodeAnalysis();
        Object value = NO_VALUE;
        String remaining = request.code;
        while (true) {
            SourceCodeAnalysis.CompletionInfo info = analysis.analyzeCompletion(remaining);
            Completeness completeness = info.completeness();
            if (completeness == Completeness.EMPTY) {
                break;
            }
            if (completeness == Completeness.DEFINITELY_INCOMPLETE
                    || completeness == Completeness.CONSIDERED_INCOMPLETE) {
                String source = info.remaining().trim();
                List<String> traceback = new ArrayList<>(List.of("Incomplete input:\n"));
                traceback.addAll(lines(source));
                return done(null, error("IncompleteSourceException", source, traceback));
            }
            // UNKNOWN (not Java as far as the analysis can tell) is compiled as it is, for
            // javac's own error.
            String source = completeness.isComplete() ? info.source() : info.remaining();
            remaining = completeness.isComplete() ? info.remaining() : "";
            if (request.stopped) {
                return interrupted();
            }
            value = NO_VALUE;
            for (SnippetEvent event : shell.eval(source)) {
                if (event.causeSnippet() != null) {
                    continue; // a snippet that depends on this one, updated
                }
                if (request.stopped) {
                    return interrupted();
                }
                JShellException exception = event.exception();
                if (exception != null) {
                    return done(null, exception(exception));
                }
                if (!event.status().isDefined()) {
                    return done(null, compilation(event.snippet()));
                }
                Object raw = control.values.getOrDefault(event.value(), NO_VALUE);
                switch (event.snippet().subKind()) {
                    case VAR_VALUE_SUBKIND:
                    case OTHER_EXPRESSION_SUBKIND:
                        value = raw;
                        break;
                    case TEMP_VAR_EXPRESSION_SUBKIND:
                        // An expression's value, as $1, $2...: dropped, as every live
                        // declaration is imported into each later snippet's compilation.
                        value = raw;
                        shell.drop(event.snippet());
                        break;
                    default:
                        value = NO_VALUE;
                }
            }
            drainOutput();
        }
        // As IJava: a value is shown as its String.valueOf, null and void not at all.
        return done(value == NO_VALUE || value == null ? null : String.valueOf(value), null);
    }

    private String interrupted() {
        return done(null, error("EvaluationInterruptedException", "Evaluation interrupted.",
                List.of("Evaluation interrupted.\n")));
    }

    /** A runtime failure, as IJava names it: EvalException (or UnresolvedReferenceException). */
    private String exception(JShellException exception) {
        if (exception instanceof UnresolvedReferenceException) {
            DeclarationSnippet snippet = ((UnresolvedReferenceException) exception).getSnippet();
            List<String> missing = shell.unresolvedDependencies(snippet).collect(Collectors.toList());
            String value = "Attempted to use " + describe(snippet) + " which cannot be used until "
                    + String.join(", ", missing) + (missing.size() == 1 ? " is" : " are") + " declared";
            List<String> traceback = new ArrayList<>(lines(snippet.source()));
            traceback.add("Unresolved dependencies:\n");
            missing.forEach(name -> traceback.add("   - " + name + "\n"));
            return error("UnresolvedReferenceException", value, traceback);
        }
        List<String> traceback = new ArrayList<>();
        for (Throwable t = exception; t != null; t = t.getCause()) {
            String name = t instanceof EvalException
                    ? ((EvalException) t).getExceptionClassName()
                    : t.getClass().getName();
            String message = expunge(t.getMessage());
            traceback.add((t == exception ? "" : "Caused by: ") + name
                    + (message == null ? "" : ": " + message) + "\n");
            StackTraceElement[] frames = t.getStackTrace();
            int end = frames.length;
            while (end > 0 && !isSnippetFrame(frames[end - 1])) {
                end--; // below the snippet: this kernel's reflection and threads
            }
            for (int i = 0; i < (end == 0 ? frames.length : end); i++) {
                traceback.add("\tat " + frame(frames[i]) + "\n");
            }
        }
        return error("EvalException", expunge(exception.getMessage()), traceback);
    }

    // JShell's own names for what the user declared: REPL.$JShell$12.x is the user's x.
    private static final Pattern INTERNAL_NAME =
            Pattern.compile("REPL\\.\\$JShell\\$\\d+[.$]");

    private static String expunge(String text) {
        return text == null ? null : INTERNAL_NAME.matcher(text).replaceAll("");
    }

    private static String describe(DeclarationSnippet snippet) {
        String kind = snippet.kind() == Snippet.Kind.METHOD ? "method" :
                snippet.kind() == Snippet.Kind.TYPE_DECL ? "class" : "variable";
        return kind + " " + snippet.name();
    }

    private static boolean isSnippetFrame(StackTraceElement frame) {
        String file = frame.getFileName();
        return file != null && file.startsWith("#");
    }

    private static String frame(StackTraceElement frame) {
        if (isSnippetFrame(frame) && frame.getClassName().isEmpty()) {
            String method = frame.getMethodName();
            return (method.isEmpty() ? "" : method) + "(" + frame.getFileName() + ":"
                    + frame.getLineNumber() + ")";
        }
        return frame.toString();
    }

    /** javac's errors, each under its source line with the span marked (as IJava, in plain text). */
    private String compilation(Snippet snippet) {
        String source = snippet.source();
        List<String> messages = new ArrayList<>();
        List<String> traceback = new ArrayList<>();
        for (Diag diag : (Iterable<Diag>) shell.diagnostics(snippet)::iterator) {
            if (!diag.isError()) {
                continue;
            }
            String message = lines(diag.getMessage(Locale.ROOT)).stream()
                    .filter(line -> !line.trim().startsWith("location:"))
                    .collect(Collectors.joining()).stripTrailing();
            messages.add(message);
            traceback.addAll(marked(source, diag.getStartPosition(), diag.getEndPosition()));
            lines(message).forEach(traceback::add);
            traceback.add("\n");
        }
        if (messages.isEmpty()) {
            messages.add("the snippet was rejected");
            traceback.addAll(lines(source));
        }
        return error("CompilationException", String.join("\n", messages), traceback);
    }

    /** The lines of `source` that hold [start, end), each followed by a line of ^~~~ under it. */
    private static List<String> marked(String source, long start, long end) {
        if (start < 0 || end < start || end > source.length()) {
            return lines(source);
        }
        List<String> out = new ArrayList<>();
        int lineStart = 0;
        for (String line : source.split("\n", -1)) {
            int lineEnd = lineStart + line.length();
            if (lineEnd >= start && lineStart <= Math.max(start, end - 1)) {
                out.add(line + "\n");
                int from = (int) Math.max(start, lineStart) - lineStart;
                int to = (int) Math.min(Math.max(end, start + 1), lineEnd + 1) - lineStart;
                StringBuilder marker = new StringBuilder(" ".repeat(from)).append('^');
                marker.append("~".repeat(Math.max(0, to - from - 1)));
                out.add(marker.append('\n').toString());
            }
            lineStart = lineEnd + 1;
        }
        return out;
    }

    private static List<String> lines(String text) {
        List<String> out = new ArrayList<>();
        for (String line : text.split("\n", -1)) {
            out.add(line + "\n");
        }
        if (text.isEmpty() || text.endsWith("\n")) {
            out.remove(out.size() - 1);
        }
        return out;
    }

    private static String stackTrace(Throwable t) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        t.printStackTrace(new PrintStream(bytes, true, StandardCharsets.UTF_8));
        return bytes.toString(StandardCharsets.UTF_8);
    }

    private static String error(String name, String value, List<String> traceback) {
        return "{\"ename\":" + Wire.quote(name) + ",\"evalue\":" + Wire.quote(value)
                + ",\"traceback\":[" + traceback.stream().map(Wire::quote).collect(Collectors.joining(","))
                + "]}";
    }

    private static String done(String result, String error) {
        return "{\"done\":true" + (result == null ? "" : ",\"result\":" + Wire.quote(result))
                + (error == null ? "" : ",\"error\":" + error) + "}";
    }

    // -- Execution -------------------------------------------------------------------------

    /**
     * JShell's local execution, with each snippet on a thread of its own that a stop ends
     * (Thread.stop: a busy loop ends too), and the values kept as objects for the reply.
     */
    private static final class Control extends DirectExecutionControl {
        final Map<String, Object> values = new HashMap<>(); // JShell's value string -> object
        volatile Request current;
        private volatile Thread running;
        private int count;

        @Override
        protected String invoke(Method doit) throws Exception {
            Request request = current;
            Object[] value = new Object[1];
            Throwable[] thrown = new Throwable[1];
            Thread thread = new Thread(() -> {
                try {
                    value[0] = doit.invoke(null);
                } catch (Throwable t) {
                    thrown[0] = t;
                }
            }, "main");
            thread.setContextClassLoader(doit.getDeclaringClass().getClassLoader());
            running = thread;
            try {
                if (request.stopped) {
                    throw new StoppedException();
                }
                thread.start();
                thread.join();
            } finally {
                running = null;
            }
            if (request.stopped) {
                throw new StoppedException();
            }
            if (thrown[0] instanceof InvocationTargetException) {
                throw (InvocationTargetException) thrown[0];
            }
            if (thrown[0] != null) {
                throw new InvocationTargetException(thrown[0]);
            }
            String key = "hearth-value-" + ++count;
            values.put(key, value[0]);
            return key;
        }

        @SuppressWarnings({"deprecation", "removal"})
        void stopRunning() {
            Thread thread = running;
            if (thread != null) {
                thread.stop();
            }
        }

        @Override
        public void stop() {
            Request request = current;
            if (request != null) {
                request.stopped = true;
            }
            stopRunning();
        }
    }

    // -- Replies ---------------------------------------------------------------------------

    /** The reply channel: whole JSON lines, from any thread. */
    private static final class Wire {
        private final OutputStream out;

        Wire(OutputStream out) {
            this.out = out;
        }

        synchronized void send(String json) {
            try {
                out.write((json + "\n").getBytes(StandardCharsets.UTF_8));
                out.flush();
            } catch (IOException e) {
                Runtime.getRuntime().halt(0); // the kernel is gone
            }
        }

        static String quote(String s) {
            if (s == null) {
                return "null";
            }
            StringBuilder out = new StringBuilder(s.length() + 2).append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                switch (c) {
                    case '"': out.append("\\\""); break;
                    case '\\': out.append("\\\\"); break;
                    case '\n': out.append("\\n"); break;
                    case '\r': out.append("\\r"); break;
                    case '\t': out.append("\\t"); break;
                    default:
                        if (c < 0x20 || Character.isSurrogate(c)) {
                            out.append(String.format("\\u%04x", (int) c));
                        } else {
                            out.append(c);
                        }
                }
            }
            return out.append('"').toString();
        }
    }

    /**
     * What the user's code prints to one stream: held (PrintStream flushes after every
     * print; a printf is many), then sent as UTF-8 text in one message.
     */
    private static final class Capture extends OutputStream {
        private final Repl repl;
        private final String name;
        private final ByteArrayOutputStream pending = new ByteArrayOutputStream();

        Capture(Repl repl, String name) {
            this.repl = repl;
            this.name = Wire.quote(name);
        }

        @Override
        public void write(int b) {
            write(new byte[] {(byte) b}, 0, 1);
        }

        @Override
        public synchronized void write(byte[] b, int off, int len) {
            pending.write(b, off, len);
            if (pending.size() >= STREAM_LIMIT) {
                drain();
            } else {
                repl.printed();
            }
        }

        synchronized void drain() {
            byte[] bytes = pending.toByteArray();
            int end = wholeCharacters(bytes);
            if (end == 0) {
                return;
            }
            pending.reset();
            pending.write(bytes, end, bytes.length - end);
            String text = new String(bytes, 0, end, StandardCharsets.UTF_8);
            repl.wire.send("{\"stream\":" + name + ",\"text\":" + Wire.quote(text) + "}");
        }

        /** How many of `bytes` end on a character: a split UTF-8 sequence waits. */
        private static int wholeCharacters(byte[] bytes) {
            for (int i = bytes.length - 1; i >= Math.max(0, bytes.length - 4); i--) {
                int b = bytes[i] & 0xff;
                if ((b & 0xc0) == 0x80) {
                    continue; // a continuation byte: look further back for its lead
                }
                int length = b < 0x80 ? 1 : b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
                return i + length > bytes.length ? i : bytes.length;
            }
            return bytes.length;
        }
    }
}
