package mec.torchserve;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingDeque;
import java.util.concurrent.TimeUnit;
import org.pytorch.serve.job.Job;

/**
 * A model's queue of inference requests whose batches wait for more requests only while
 * another worker of the model computes.
 *
 * <p>TorchServe's worker takes the first request of its next batch, then polls this queue
 * for more until the batch is full or the model's batch delay has passed. A lone client
 * pays that delay on every request; several clients need it, as their requests come back
 * one by one while a worker computes. So a poll for more takes what is queued, and waits
 * only if another worker holds a batch: while the others are idle, no other request is on
 * its way and the batch leaves at once.
 */
final class BatchQueue extends LinkedBlockingDeque<Job> {

    private static final long serialVersionUID = 1L;

    /** The workers' threads that took a batch and have not asked for the next one yet. */
    private final transient Set<Thread> computing = ConcurrentHashMap.newKeySet();

    BatchQueue(int capacity) {
        super(capacity);
    }

    /** The worker on this thread asks for its next batch: it computes none. */
    void idle(Thread worker) {
        computing.remove(worker);
    }

    @Override
    public Job poll(long timeout, TimeUnit unit) throws InterruptedException {
        Thread worker = Thread.currentThread();
        if (timeout == Long.MAX_VALUE) { // the first request of a batch: wait for one
            Job first = super.poll(timeout, unit);
            if (first != null) {
                computing.add(worker);
            }
            return first;
        }
        Job queued = super.poll();
        if (queued != null || !othersCompute(worker)) {
            return queued;
        }
        return super.poll(timeout, unit);
    }

    private boolean othersCompute(Thread worker) {
        computing.removeIf(t -> !t.isAlive()); // a worker thread that ended mid-batch
        for (Thread t : computing) {
            if (t != worker) {
                return true;
            }
        }
        return false;
    }
}
