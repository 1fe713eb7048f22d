package mec.torchserve;

import com.google.gson.JsonObject;
import java.io.IOException;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.concurrent.LinkedBlockingDeque;
import org.pytorch.serve.job.Job;
import org.pytorch.serve.servingsdk.Context;
import org.pytorch.serve.servingsdk.ModelServerEndpoint;
import org.pytorch.serve.servingsdk.annotations.Endpoint;
import org.pytorch.serve.servingsdk.annotations.helpers.EndpointTypes;
import org.pytorch.serve.servingsdk.http.Request;
import org.pytorch.serve.servingsdk.http.Response;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;

/**
 * The management endpoint /adaptive-batching/{model}/{version}: PUT gives a registered
 * model version that has no worker yet a BatchQueue (its batches wait for more requests
 * only while another of its workers computes), GET says whether it has one.
 *
 * <p>TorchServe 0.12 keeps a model's queues in the private field {@code Model.jobsDb} and
 * has no setting for how a batch waits; this replaces that field's map. Only before the
 * workers start: a worker waiting for a request holds the model's lock on the old queue.
 */
@Endpoint(
        urlPattern = "adaptive-batching",
        endpointType = EndpointTypes.MANAGEMENT,
        description = "Batches that wait for more requests only while another worker computes")
public final class AdaptiveBatching extends ModelServerEndpoint {

    @Override
    public void doGet(Request req, Response rsp, Context ctx) throws IOException {
        Model model = model(req, rsp);
        if (model != null) {
            answer(rsp, 200, model, null);
        }
    }

    @Override
    public void doPut(Request req, Response rsp, Context ctx) throws IOException {
        Model model = model(req, rsp);
        if (model == null) {
            return;
        }
        synchronized (model) {
            if (queues(model) instanceof JobQueues) {
                answer(rsp, 200, model, null);
            } else if (ModelManager.getInstance().getNumRunningWorkers(
                            model.getModelVersionName()) > 0) {
                answer(rsp, 409, model, "it has workers: register it with 0 workers first");
            } else {
                LinkedBlockingDeque<Job> before = queues(model).get(Model.DEFAULT_DATA_QUEUE);
                BatchQueue batches = new BatchQueue(before.size() + before.remainingCapacity());
                before.drainTo(batches);
                set(model, new JobQueues(queues(model), batches));
                answer(rsp, 200, model, null);
            }
        }
    }

    @Override
    public void doPost(Request req, Response rsp, Context ctx) throws IOException {
        notAllowed(rsp);
    }

    @Override
    public void doDelete(Request req, Response rsp, Context ctx) throws IOException {
        notAllowed(rsp);
    }

    private static void notAllowed(Response rsp) throws IOException {
        JsonObject body = new JsonObject();
        body.addProperty("code", 405);
        body.addProperty("type", "MethodNotAllowedException");
        body.addProperty("message", "/adaptive-batching/{model}/{version} takes GET and PUT");
        rsp.setHeader("Allow", "GET, PUT");
        write(rsp, 405, body);
    }

    /** The model version that the path names, or null once a 404 is answered. */
    private static Model model(Request req, Response rsp) throws IOException {
        String[] path = req.getRequestURI().split("\\?", 2)[0].split("/");
        Model model = null;
        if (path.length == 4) {
            try {
                model = ModelManager.getInstance().getModel(path[2], path[3]);
            } catch (Exception e) { // an unknown version
                model = null;
            }
        }
        if (model == null) {
            JsonObject body = new JsonObject();
            body.addProperty("code", 404);
            body.addProperty("type", "ModelNotFoundException");
            body.addProperty("message", "no such model version: /adaptive-batching/{model}/{version}");
            write(rsp, 404, body);
        }
        return model;
    }

    private static void answer(Response rsp, int code, Model model, String refused)
            throws IOException {
        JsonObject body = new JsonObject();
        body.addProperty("model", model.getModelName());
        body.addProperty("version", model.getVersion());
        body.addProperty("adaptive", queues(model) instanceof JobQueues);
        if (refused != null) {
            body.addProperty("code", code);
            body.addProperty("message", refused);
        }
        write(rsp, code, body);
    }

    private static void write(Response rsp, int code, JsonObject body) throws IOException {
        rsp.setStatus(code);
        rsp.setContentType("application/json");
        rsp.getOutputStream().write(body.toString().getBytes(StandardCharsets.UTF_8));
    }

    private static Field field() {
        try {
            Field f = Model.class.getDeclaredField("jobsDb");
            f.setAccessible(true);
            return f;
        } catch (NoSuchFieldException e) {
            throw new IllegalStateException("not TorchServe 0.12: Model has no jobsDb", e);
        }
    }

    @SuppressWarnings("unchecked")
    private static Map<String, LinkedBlockingDeque<Job>> queues(Model model) {
        try {
            return (Map<String, LinkedBlockingDeque<Job>>) field().get(model);
        } catch (IllegalAccessException e) {
            throw new IllegalStateException(e);
        }
    }

    private static void set(Model model, JobQueues queues) {
        try {
            field().set(model, queues);
        } catch (IllegalAccessException e) {
            throw new IllegalStateException(e);
        }
    }
}
