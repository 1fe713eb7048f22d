# TorchServe 0.12.0 (its last release) with our handler and its Python package installed.
FROM pytorch/torchserve:0.12.0-cpu

USER root
COPY pyproject.toml README.md /src/
COPY client /src/client
COPY mec_core /src/mec_core
COPY mec_platform /src/mec_platform
COPY api /src/api
COPY worker /src/worker
COPY serving /src/serving
# our frontend plugin (serving.plugin: batches that wait only while another worker
# computes), compiled with the image's JDK against its TorchServe
RUN pip install --no-cache-dir /src/client /src && mkdir -p /home/model-server/ts-home \
    && python -m serving.plugin /home/model-server/plugins \
    && chown -R model-server /home/model-server
COPY docker/torchserve.properties /home/model-server/config.properties
COPY serving/log4j2.xml /home/model-server/log4j2.xml
USER model-server
WORKDIR /home/model-server/ts-home
# key_file.json (token authorization) is written into the working directory, a volume
# shared only with the torchserve-keys service, which publishes the keys in the store
CMD ["torchserve", "--start", "--foreground", "--ncs", "--ts-config", "/home/model-server/config.properties", "--model-store", "/models"]
