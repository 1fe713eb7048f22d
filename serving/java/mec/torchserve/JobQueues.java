package mec.torchserve;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingDeque;
import org.pytorch.serve.job.Job;
import org.pytorch.serve.wlm.Model;

/**
 * A model's queues by name, its inference requests' in a BatchQueue. A worker's thread
 * looks up its own queue (by its id) first thing when it asks for its next batch, after it
 * answered the last one and before it waits for the model's lock: the moment it computes
 * no more, which this map tells the BatchQueue.
 */
final class JobQueues extends ConcurrentHashMap<String, LinkedBlockingDeque<Job>> {

    private static final long serialVersionUID = 1L;

    private final BatchQueue batches;

    JobQueues(Map<String, LinkedBlockingDeque<Job>> queues, BatchQueue batches) {
        super(queues);
        this.batches = batches;
        put(Model.DEFAULT_DATA_QUEUE, batches);
    }

    @Override
    public LinkedBlockingDeque<Job> get(Object name) {
        if (!Model.DEFAULT_DATA_QUEUE.equals(name)) {
            batches.idle(Thread.currentThread());
        }
        return super.get(name);
    }
}
